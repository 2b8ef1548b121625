"""End to end: the admin's day on the real ``tosca --sim`` in a real terminal (tmux), by keystrokes only.

An admin (``ada``, made with ``tosca user add`` beforehand, as is a second admin ``bob``) logs in at the
console, adds the technician ``tina``, lowers the system's maximum laser power, and imports a protocol file
(its path typed in the import dialog); approving it herself is refused. ``bob`` logs in and approves it.
``tina`` logs in, chooses her own password, and treats a new subject with that protocol on the simulated
rig. ``ada`` then reads the audit trail, filtered to the rows that record a change: every step is on it, and
the database's rows carry the old and new values.

Every field is typed with one ``send-keys`` and the screen is read until it shows what was typed; only the
Tab keys that walk to a filter field are spaced by a short pause. The terminal is 80x24, the smallest the
console is made for. The protocol is one 3 s step at 2 W so the whole day stays short.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_console_in_tmux import TOSCA, Terminal, controllers_of, fill, stop_controllers

from tests.support import RIG_TEST, protocol_json
from tui.cli import main

pytestmark = RIG_TEST

ADA_PASSWORD = "ada's password 1"
BOB_PASSWORD = "bob's password 2"
FIRST_PASSWORD = "first password 3"
TINA_PASSWORD = "tina's own pass 4"
PROTOCOL = "A short e2e test (3 s at 2 W)"


def prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The schema and the two admins, by ``tosca db upgrade`` and ``tosca user add`` (passwords on stdin; run
    in this process, which spares two interpreter start-ups), and the protocol file; returns the data
    directory."""
    data_dir = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    for username, full_name, password in (
        ("ada", "Ada Admin", ADA_PASSWORD),
        ("bob", "Bob Admin", BOB_PASSWORD),
    ):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        argv = ["user", "add", "--username", username, "--full-name", full_name, "--role", "admin"]
        assert main([*argv, "--data-dir", str(data_dir)]) == 0
    (tmp_path / "short.json").write_text(protocol_json((3, 2.0, 2.0, 3.0, "constant"), max_power=4.0))
    return data_dir


def log_in(term: Terminal, username: str, password: str) -> None:
    term.wait_for("Log in to the console", 30.0)
    fill(term, username)
    term.keys("Enter")
    term.focus_moves_to("Password")
    fill(term, password, shown="•" * len(password))
    term.keys("Enter")


def log_out(term: Terminal, welcome: str) -> None:
    term.keys("Escape")
    term.wait_for(welcome)
    term.keys("C-o")
    term.wait_for("Log in")


def audit_rows(data_dir: Path) -> list[tuple[str, str, str, dict[str, object]]]:
    with sqlite3.connect(data_dir / "tosca.db") as db:
        rows = db.execute(
            "SELECT username, action, outcome, details FROM audit_log ORDER BY audit_id"
        ).fetchall()
    return [(str(u), str(a), str(o), json.loads(d) if d else {}) for u, a, o, d in rows]


@pytest.mark.timeout(180)
def test_an_admin_sets_up_a_technician_who_treats_with_the_approved_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = prepare(tmp_path, monkeypatch)
    capsys.readouterr()
    exit_file = tmp_path / "exit-code"
    command = f"{TOSCA} --sim --data-dir data; echo $? > {exit_file}; sleep 30"
    term = Terminal(f"cd {tmp_path} && {command}", width=80, height=24, logs=data_dir / "logs")
    try:
        # ada: a technician, a configuration value, a protocol file.
        log_in(term, "ada", ADA_PASSWORD)
        term.wait_for("Welcome, Ada Admin")
        term.keys("u")
        term.wait_for("a Add")
        term.keys("a")
        term.wait_for("Add a user")
        term.focus_moves_to("Username")
        fill(term, "tina")
        for label, value in (("Full name", "Tina Tech"), ("Role", "technician")):
            term.keys("Enter")
            term.focus_moves_to(label)
            fill(term, value)
        for label in ("Password", "Repeat"):
            term.keys("Enter")
            term.focus_moves_to(label)
            term.type(FIRST_PASSWORD)
        term.wait_for(lambda s: s.count("•" * len(FIRST_PASSWORD)) == 2)
        term.keys("Enter")
        term.wait_for(lambda s: "Tina Tech" in s and "Add a user" not in s)

        term.keys("Escape")
        term.wait_for("Welcome, Ada Admin")
        term.keys("c")
        term.wait_for("max_laser_power_watts")
        term.keys("e")
        term.wait_for("Change max_laser_power_watts")
        term.focus_moves_to("New value")
        term.keys("End", "BSpace", "BSpace", "BSpace", "BSpace")
        term.wait_for(lambda s: "10.0" not in s.split("New value", 1)[1].splitlines()[0])
        fill(term, "9.5")
        term.keys("Enter")
        term.focus_moves_to("Reason")
        fill(term, "new laser head")
        term.keys("Enter")
        term.wait_for("max_laser_power_watts changed from 10.0 to 9.5")

        term.keys("Escape")
        term.wait_for("Welcome, Ada Admin")
        term.keys("p")
        term.wait_for("Seed example")
        term.keys("i")
        term.wait_for("Import a protocol file")
        term.focus_moves_to("File")
        fill(term, "short.json")  # the console runs in the file's folder
        term.keys("Enter")
        term.focus_moves_to("Name")
        fill(term, PROTOCOL)  # in place of the highlighted protocol's name (all of it selected on focus)
        term.keys("Enter")
        term.wait_for(f"{PROTOCOL} v1 stored as a draft")
        term.wait_for(f"{PROTOCOL} v1: draft; by ada")  # the list read again, the new version highlighted
        term.keys("a")  # her own draft: refused at once
        term.wait_for(f"{PROTOCOL} v1: ada is its author")
        log_out(term, "Welcome, Ada Admin")

        # bob approves it: it is the first row, highlighted.
        log_in(term, "bob", BOB_PASSWORD)
        term.wait_for("Welcome, Bob Admin")
        term.keys("p")
        term.wait_for(f"{PROTOCOL} v1: draft")
        term.keys("a")
        term.wait_for(f"Approve {PROTOCOL} v1 for treatment?")
        term.keys("y")
        term.wait_for(f"{PROTOCOL} v1: draft -> approved")
        log_out(term, "Welcome, Bob Admin")

        # tina: her own password, a subject, the approved protocol on the simulated rig.
        log_in(term, "tina", FIRST_PASSWORD)
        term.wait_for("Choose your own to continue")
        fill(term, TINA_PASSWORD, shown="•" * len(TINA_PASSWORD))
        term.keys("Enter")
        term.focus_moves_to("Repeat password")
        term.type(TINA_PASSWORD)
        term.wait_for(lambda s: s.count("•" * len(TINA_PASSWORD)) == 2)
        term.keys("Enter")
        term.wait_for("Welcome, Tina Tech")
        term.wait_for("Treat: subjects", 30.0)
        term.keys("t")
        term.wait_for("n creates the first", 15.0)
        term.keys("n")
        code = f"P-{datetime.now().year}-0001"
        term.wait_for(code)
        fill(term, "1980-05-17")
        for label, value in (("Gender", "female"), ("Notes", "admin e2e")):
            term.keys("Enter")
            term.focus_moves_to(label)
            fill(term, value)
        term.keys("Enter")
        term.wait_for(lambda s: code in s and "1980-05-17" in s and "Date of birth" not in s)
        term.keys("Enter")
        screen = term.wait_for("version 1.")  # the approved version's preview
        assert PROTOCOL in screen and "DRAFT" not in screen
        term.keys("Enter")
        term.wait_for(lambda s: "All " in s and "checks pass" in s, 60.0)
        term.type(TINA_PASSWORD)
        term.keys("Enter")
        term.wait_for("the footpedal starts emission", 30.0)
        term.wait_for("step 1 of 1", 30.0)
        term.keys("F5")
        term.wait_for("LASER EMISSION", 15.0)
        term.wait_for("Save notes", 30.0)
        term.type("tolerated well")
        term.wait_for("tolerated well")
        term.keys("C-s")
        term.wait_for("Sign session", 20.0)  # signed with the password, meaning "performed by"
        term.type(TINA_PASSWORD)
        term.wait_for("•" * len(TINA_PASSWORD))
        term.keys("Enter")
        term.wait_for(lambda s: code in s and "Save notes" not in s and "Sign session" not in s, 20.0)
        term.keys("Escape")
        log_out(term, "Welcome, Tina Tech")

        # ada reads the audit trail, filtered to the rows that carry an old and a new value.
        log_in(term, "ada", ADA_PASSWORD)
        term.wait_for("Welcome, Ada Admin")
        term.keys("a")
        term.wait_for("newest first")
        for _field in range(6):  # from the table round to the free-text filter, the sixth field
            term.keys("Tab")
            time.sleep(0.2)  # Tabs sent in one burst are not all taken as keys: a short pause between them
        fill(term, "old", shown=lambda s: "Text old" in s)
        term.keys("Enter")
        screen = term.wait_for(lambda s: "protocol_import" in s and "text 'old'" in s)
        for action in ("protocol_approve", "protocol_import", "config_change", "user_create"):
            assert action in screen, action
        # Each row's details begin with what changed (the rest is cut to the column; the database holds all).
        assert (
            "key=max_laser_power" in screen and "created=tina" in screen and "new_status=approved" in screen
        )
        term.keys("Escape")
        term.wait_for("Welcome, Ada Admin")
        term.keys("C-q")
        deadline = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exit_file.read_text().strip() == "0"
    finally:
        term.close()
        stop_controllers(data_dir)
    assert controllers_of(data_dir) == []

    rows = audit_rows(data_dir)
    done = {(user, action): details for user, action, outcome, details in rows if outcome == "success"}
    created = done[("ada", "user_create")]
    assert created["created"] == "tina" and created["old"] == {}
    assert isinstance(created["new"], dict) and created["new"]["role"] == "technician"
    config = done[("ada", "config_change")]
    assert (config["key"], config["old"], config["new"]) == ("max_laser_power_watts", 10.0, 9.5)
    imported = done[("ada", "protocol_import")]
    assert (imported["protocol"], imported["old_status"], imported["new_status"]) == (PROTOCOL, None, "draft")
    assert ("ada", "protocol_approve", "failure") in [(u, a, o) for u, a, o, _d in rows]
    approved = done[("bob", "protocol_approve")]
    assert (approved["old_status"], approved["new_status"]) == ("draft", "approved")
    with sqlite3.connect(data_dir / "tosca.db") as db:
        status, protocol, notes = db.execute(
            "SELECT status, protocol_name, COALESCE(treatment_notes, '') FROM sessions"
        ).fetchone()
        tech = db.execute(
            "SELECT u.username FROM sessions s JOIN tech_users u ON u.tech_id = s.tech_id"
        ).fetchone()[0]
    assert (status, protocol, tech) == ("completed", PROTOCOL, "tina")
    assert "Trial" not in notes  # the approved version, not a draft's trial
