"""End to end: the real ``tosca --sim`` in a real terminal (tmux), driven by keystrokes, read off the screen.

What a new user does on a fresh data directory: the console opens "create the first administrator", the
administrator is created and lands on the home screen, logs out, fails a login, logs in again, and quits.
Afterwards the database holds the account and the audit trail of all of it. Keys are sent one field at a
time and every step waits for the screen to show its result (never a fixed sleep).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TOSCA = Path(sys.executable).with_name("tosca")
PASSWORD = "correct horse battery"


class Terminal:
    """One tmux session running a command in an 80x24 terminal."""

    def __init__(self, command: str, *, width: int = 80, height: int = 24, logs: Path | None = None) -> None:
        self.name = f"tosca-e2e-{uuid.uuid4().hex[:8]}"
        self.logs = logs  # the data directory's logs, quoted when a wait times out
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command],
            check=True,
        )

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=False
        )
        return out.stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        args = ["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys]
        subprocess.run(args, check=True)

    def type(self, text: str) -> None:
        self.keys(text, literal=True)

    def wait_for(self, what: str | Callable[[str], bool], timeout_s: float = 15.0) -> str:
        check = what if callable(what) else (lambda screen: what in screen)
        deadline = time.monotonic() + timeout_s
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what!r}; the cursor is on row {self.cursor_row()}; "
            f"the screen shows:\n{screen}{self.log_tails()}"
        )

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of each log of the data directory (what the console and controller said)."""
        if self.logs is None or not self.logs.is_dir():
            return ""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        database = self.logs.parent / "tosca.db"
        if database.is_file():
            with (
                contextlib.suppress(sqlite3.Error),
                sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db,
            ):
                rows = db.execute(
                    "SELECT timestamp, username, action, outcome, details FROM audit_log "
                    "ORDER BY audit_id DESC LIMIT ?",
                    (lines,),
                ).fetchall()
                parts.append("\n--- audit_log (newest first)\n" + "\n".join(map(str, rows)))
        return "".join(parts)

    def colours(self) -> set[str]:
        """The colour parameters of every SGR sequence on the screen as tmux holds it (``capture-pane -e``):
        ``"31"``, ``"38;5;208"``, ``"48;2;10;20;30"``, ..."""
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-e", "-t", self.name], capture_output=True, text=True, check=False
        )
        found: set[str] = set()
        for params in re.findall(r"\x1b\[([0-9;]*)m", out.stdout):
            parts = params.split(";")
            i = 0
            while i < len(parts):
                part = parts[i]
                if part in ("38", "48") and i + 1 < len(parts):
                    size = 3 if parts[i + 1] == "5" else 5
                    found.add(";".join(parts[i : i + size]))
                    i += size
                    continue
                if part and (30 <= int(part) <= 49 or 90 <= int(part) <= 107):
                    found.add(part)
                i += 1
        return found

    def cursor_row(self) -> int:
        """The terminal cursor's row: Textual puts it in the focused input field (once it has drawn it)."""
        out = subprocess.run(
            ["tmux", "display", "-p", "-t", self.name, "#{cursor_y}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return int(out.stdout.strip() or -1)

    def focus_moves_to(self, label: str, timeout_s: float = 10.0) -> None:
        """Wait until the input on the row labelled ``label`` has the focus (the cursor sits in it), so what
        is typed next cannot land in the previous field."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = [i for i, line in enumerate(self.screen().splitlines()) if f"{label} " in line]
            if rows and self.cursor_row() == rows[0]:
                return
            time.sleep(0.02)
        raise AssertionError(
            f"the field {label!r} never got the focus; the screen shows:\n{self.screen()}{self.log_tails()}"
        )

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


def controllers_of(data_dir: Path) -> list[int]:
    """PIDs of the controller processes running for ``data_dir`` (read from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"controller" in argv and str(data_dir).encode() in argv:
            found.append(int(entry.name))
    return found


def stop_controllers(data_dir: Path) -> None:
    """Whatever happened, no controller of this test is left running."""
    for pid in controllers_of(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def terminal(data_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed for the end-to-end tests (.ci/run installs it)")
    exit_file = tmp_path / "exit-code"
    command = (
        f"cd {tmp_path} && TERM=xterm-256color {TOSCA} --sim --data-dir data; echo $? > {exit_file}; sleep 30"
    )
    term = Terminal(command, logs=data_dir / "logs")
    term.exit_file = exit_file  # type: ignore[attr-defined]
    try:
        yield term
    finally:
        term.close()
        stop_controllers(data_dir)


def fill(term: Terminal, text: str, *, shown: str | Callable[[str], bool] | None = None) -> None:
    """Type into the focused field and wait until the screen shows it (masked fields show dots)."""
    term.type(text)
    term.wait_for(shown if shown is not None else text)


@pytest.mark.timeout(120)
def test_first_run_login_logout_and_audit_trail(terminal: Terminal, data_dir: Path) -> None:
    term = terminal
    screen = term.wait_for("Create the first administrator")
    assert "SIMULATED RIG" in screen

    fill(term, "alice")
    term.keys("Enter")
    term.focus_moves_to("Full name")
    fill(term, "Alice Admin")
    term.keys("Enter")
    term.focus_moves_to("Password")
    fill(term, PASSWORD, shown="•" * len(PASSWORD))
    term.keys("Enter")
    term.focus_moves_to("Repeat password")
    term.type(PASSWORD)
    term.wait_for(lambda screen: screen.count("•" * len(PASSWORD)) == 2)
    term.keys("Enter")

    home = term.wait_for("20261207_005")  # the schema version: the database facts have been read
    assert "Welcome, Alice Admin" in home
    assert "alice (admin)" in home
    # The database path wraps inside the panel: join the panel's lines to read it whole.
    panel_text = "".join(line.strip(" │") for line in home.splitlines())
    assert str(data_dir / "tosca.db") in panel_text

    term.keys("C-o")  # log out
    term.wait_for(lambda s: "Log in" in s and "Welcome" not in s)
    fill(term, "alice")
    term.keys("Enter")
    term.focus_moves_to("Password")
    fill(term, "not the password", shown="•" * len("not the password"))
    term.keys("Enter")
    term.wait_for("wrong username or password")

    # The password field is cleared after a failure (its hint shows again) and keeps the cursor; the right
    # password logs in. Nothing is sent to clear it: a control key sent just before the password can reach
    # the console in the same read as the password, which Textual then takes as a paste.
    term.wait_for(lambda s: any("Password" in line and "your password" in line for line in s.splitlines()))
    term.focus_moves_to("Password")
    fill(term, PASSWORD, shown="•" * len(PASSWORD))
    term.keys("Enter")
    term.wait_for("Welcome, Alice Admin")

    term.keys("C-q")
    exit_file: Path = term.exit_file  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exit_file.read_text().strip() == "0"

    with sqlite3.connect(data_dir / "tosca.db") as db:
        user = db.execute(
            "SELECT role, is_active, password_hash LIKE '$argon2id$%' FROM tech_users "
            "WHERE username = 'alice'"
        ).fetchone()
        rows = db.execute(
            "SELECT action, outcome, details FROM audit_log WHERE username = 'alice' OR tech_id = "
            "(SELECT tech_id FROM tech_users WHERE username = 'alice') ORDER BY audit_id"
        ).fetchall()

    # Each login also authenticates the console's connection to the controller once the controller is up
    # (audited as a login on the controller's socket, at a moment of its own; a quick quit may come first).
    # A sign-in the controller answers only after the logout is undone at once (a logout command on the
    # socket). Those rows are counted apart from the console's.
    def on_socket(details: str | None) -> bool:
        return "control_connection" in (details or "") or '"command": "logout"' in (details or "")

    connection = [(a, o) for a, o, d in rows if on_socket(d)]
    actions = [(a, o) for a, o, d in rows if not on_socket(d)]
    assert set(connection) <= {("login", "success"), ("control_command", "success")}, rows
    assert connection.count(("login", "success")) <= 2, rows
    assert user == ("admin", 1, 1)
    assert actions[:3] == [("user_create", "success"), ("password_set", "success"), ("login", "success")]
    assert actions[3:] == [
        ("logout", "success"),
        ("login", "failure"),
        ("login", "success"),
        ("logout", "success"),  # quitting while logged in is recorded as a logout
    ]


@pytest.mark.timeout(60)
def test_a_database_that_cannot_be_upgraded_ends_the_start_with_the_reason(tmp_path: Path) -> None:
    """The login screen is drawn before the database is opened; when the opening then fails (here a schema
    revision newer than this console), the console leaves the terminal, says why in one line and exits 1."""
    from storage.maintenance import upgrade
    from storage.paths import DataDir

    data_dir = DataDir(tmp_path / "data")
    upgrade(data_dir)
    with contextlib.closing(sqlite3.connect(data_dir.db_path)) as db, db:
        db.execute(
            "INSERT INTO tech_users (username, full_name, role, is_active, password_hash) "
            "VALUES ('ada', 'Ada Admin', 'admin', 1, 'not a hash')"
        )
        db.execute("UPDATE alembic_version SET version_num = '20990101_999'")
    exit_file = tmp_path / "exit-code"
    term = Terminal(f"cd {tmp_path} && {TOSCA} --sim --data-dir data; echo $? > {exit_file}; sleep 30")
    try:
        screen = term.wait_for("unknown to this console")
        assert "tosca: tosca.db has schema revision 20990101_999, unknown to this console" in screen
        deadline = time.monotonic() + 10.0
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exit_file.read_text().strip() == "1"
    finally:
        term.close()
        stop_controllers(data_dir.root)
    # Nothing was changed: the revision is the one found.
    with contextlib.closing(sqlite3.connect(data_dir.db_path)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("20990101_999",)
