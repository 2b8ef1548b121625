"""End to end: a whole treatment on the real ``tosca --sim`` in a real terminal (tmux), by keystrokes only.

The console starts its own controller process (none is running), exactly as on a desktop. The technician
logs in, creates a subject, chooses a protocol, passes the checks, arms with the password, presses the
simulated footpedal (F5), releases it and presses it again mid-step, lets the protocol complete, writes the
notes and quits. Then the database holds the session as the controller recorded it, and the controller the
console started has stopped. The protocol is a short one (5 s at 2 W, then a 4 s ramp to 3 W) so the test
stays quick; a longer two-step one runs through the same screens in ``tests/tui/test_treatment_workflow.py``,
and the seed's 90 s protocol headless in ``tests/control/test_sim_run.py``.

The terminal is the Linux console's (``TERM=linux``: 16 colours) at 200x60, the largest size the console is
made for: the dashboard must use no colour that console cannot show. The Pilot tests and snapshots cover
80x24 and 120x40 with true colour.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_console_in_tmux import TOSCA, Terminal, controllers_of, fill, stop_controllers

from control.protocol_approval import approve_as_system
from storage import create_engine, session_factory
from storage.repositories import ProtocolsRepository
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST


PASSWORD = "treat me right 7"
PROTOCOL = "A short test (5 s at 2 W, 4 s ramp to 3 W)"
NOTES = "tolerated well"


async def add_protocol(db_path: Path) -> None:
    engine = create_engine(db_path)
    try:
        async with session_factory(engine)() as db, db.begin():
            added = await ProtocolsRepository(db).add(
                PROTOCOL,
                "multi_step",
                protocol_json((5, 2.0, 2.0, 3.0, "constant"), (4, 2.0, 3.0, 3.0, "linear"), max_power=8.0),
            )
            await approve_as_system(db, added.protocol_id)
    finally:
        await engine.dispose()


def prepare(data_dir: Path) -> None:
    """The schema, an administrator and a technician (passwords on stdin) and the short protocol."""
    subprocess.run(
        [str(TOSCA), "db", "upgrade", "--data-dir", str(data_dir)], check=True, capture_output=True
    )
    for username, full_name, role in (("ada", "Ada Admin", "admin"), ("tina", "Tina Tech", "technician")):
        subprocess.run(
            [
                *(str(TOSCA), "user", "add", "--username", username, "--full-name", full_name),
                *("--role", role, "--data-dir", str(data_dir)),
            ],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
    asyncio.run(add_protocol(data_dir / "tosca.db"))


@pytest.mark.timeout(240)
def test_a_whole_treatment_by_keystrokes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    prepare(data_dir)
    exit_file = tmp_path / "exit-code"
    command = f"{TOSCA} --sim --data-dir data; echo $? > {exit_file}; sleep 30"
    term = Terminal(
        f"cd {tmp_path} && TERM=linux {command}",
        width=200,
        height=60,
        logs=data_dir / "logs",
    )
    try:
        term.wait_for("Log in", 30.0)
        fill(term, "tina")
        term.keys("Enter")
        term.focus_moves_to("Password")
        fill(term, PASSWORD, shown="•" * len(PASSWORD))
        term.keys("Enter")
        term.wait_for("Welcome, Tina Tech")
        term.wait_for("Treat: subjects", 30.0)  # shown once the controller is connected

        term.keys("t")
        term.wait_for("n creates the first", 15.0)
        term.keys("n")
        code = f"P-{datetime.now().year}-0001"
        term.wait_for(code)
        # Enter moves from field to field and saves from the last; each value is seen before the next.
        fill(term, "1980-05-17")
        for label, value in (("Gender", "female"), ("Notes", "e2e subject")):
            term.keys("Enter")
            term.focus_moves_to(label)
            fill(term, value)
        term.keys("Enter")
        term.wait_for(lambda s: code in s and "1980-05-17" in s and "Date of birth" not in s)

        term.keys("Enter")
        term.wait_for("A short test")
        term.wait_for("Step")  # the preview of the highlighted (first) protocol
        term.keys("Enter")

        term.wait_for("checks pass", 60.0)
        term.wait_for(lambda s: "All " in s and "checks pass" in s, 30.0)
        term.type(PASSWORD)
        term.keys("Enter")
        term.wait_for("the footpedal starts emission", 30.0)
        term.wait_for(lambda s: "step 1 of 2" in s, 30.0)  # the ring is in place

        term.keys("F5")
        screen = term.wait_for("LASER EMISSION", 15.0)
        assert "SIMULATED HARDWARE" in screen and "PRESSED" in screen
        colours = term.colours()
        assert colours, "the dashboard is drawn in colour"
        assert not [c for c in colours if c.startswith(("38;", "48;"))], f"beyond 16 colours: {colours}"
        term.wait_for(lambda s: "treating 00:02" in s or "treating 00:03" in s, 15.0)
        term.keys("F5")  # released mid-step: back to ARMED, the step clock stops
        term.wait_for("the footpedal starts emission", 10.0)
        term.keys("F5")
        term.wait_for("LASER EMISSION", 10.0)
        # The stop key, as a terminal sends it (read and sent to the controller by the input thread).
        term.keys("F12")
        screen = term.wait_for("PAUSED - LASER OFF", 10.0)
        term.wait_for("laser stopped (paused)", 10.0)
        term.keys("F5")  # release the pedal, resume, press it again
        term.wait_for(lambda s: "PRESSED" not in s, 10.0)
        # The stop key's own connection paused the session, not this console's: resuming is arming again
        # with the password (key control).
        term.keys("r")
        term.wait_for("Key control: enter your password to arm.", 10.0)
        term.type(PASSWORD)
        term.wait_for("•" * len(PASSWORD))
        term.keys("Enter")
        term.wait_for("the footpedal starts emission", 10.0)
        term.keys("F5")
        term.wait_for("LASER EMISSION", 10.0)

        term.wait_for("Save notes", 60.0)  # the protocol completed: the end-of-session screen
        term.wait_for("completed", 15.0)
        term.type(NOTES)
        term.wait_for(NOTES)
        term.keys("C-s")
        term.wait_for("Sign session", 20.0)  # signed with the password, meaning "performed by"
        term.type(PASSWORD)
        term.wait_for("•" * len(PASSWORD))
        term.keys("Enter")
        term.wait_for(lambda s: code in s and "active subjects" in s and "Sign session" not in s, 20.0)
        term.keys("Escape")
        term.wait_for("Welcome, Tina Tech")
        term.keys("C-q")
        deadline = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exit_file.read_text().strip() == "0"
        deadline = time.monotonic() + 20
        while controllers_of(data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        term.close()
        leftover = controllers_of(data_dir)
        stop_controllers(data_dir)

    with sqlite3.connect(data_dir / "tosca.db") as db:
        status, protocol, notes, laser_on_s, energy_j = db.execute(
            "SELECT status, protocol_name, post_treatment_notes, total_laser_on_time_seconds, "
            "total_energy_joules FROM sessions"
        ).fetchone()
        subject = db.execute("SELECT subject_code FROM subjects").fetchone()[0]
        pedal_releases = db.execute(
            "SELECT COUNT(*) FROM safety_log WHERE description LIKE 'treating -> armed%'"
        ).fetchone()[0]
        stops = db.execute(
            "SELECT COUNT(*) FROM safety_log WHERE description LIKE 'treating -> paused%'"
        ).fetchone()[0]
    assert (status, protocol, subject) == ("completed", PROTOCOL, code)
    assert NOTES in (notes or "")
    assert laser_on_s == pytest.approx(9.0, abs=0.5)
    # 5 s at 2 W and a 4 s ramp from 2 to 3 W: 20 J.
    assert energy_j == pytest.approx(20.0, rel=0.1)
    assert pedal_releases >= 1
    assert stops == 1, "the stop key paused the treatment once"
    # The controller the console started stopped with it.
    assert leftover == []
