"""``tosca`` start-up: data directory, console lock, database upgrade, then the app."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import DataDir
from storage.errors import DatabaseInUseError
from storage.locks import console_lock_holder, hold_console_lock, hold_database_exclusively
from storage.maintenance import head_revision, schema_revision
from tui.cli import main
from tui.commands.console import prepared_console, settings_from_args
from tui.settings import ConsoleSettings


def test_settings_come_from_the_command_line() -> None:
    args = argparse.Namespace(data_dir=Path("/srv/tosca"), sim=True, kiosk=True)
    settings = settings_from_args(args)
    assert (settings.data_dir, settings.sim, settings.kiosk) == (Path("/srv/tosca"), True, True)


def test_start_up_creates_the_data_dir_locks_it_and_upgrades_the_database(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "fresh")
    with prepared_console(ConsoleSettings(data_dir=data_dir.root)) as start:
        assert console_lock_holder(data_dir) == 0  # held, shared: consoles write no PID
        with pytest.raises(DatabaseInUseError):
            with hold_database_exclusively(data_dir):
                pass
        # No database yet: the first-run screen can be drawn at once, and the upgrade (creating it) follows.
        assert start.pending_upgrade is not None
        assert schema_revision(data_dir.db_path) is None
        start.pending_upgrade()
        assert schema_revision(data_dir.db_path) == head_revision()
        assert data_dir.backups.is_dir() and data_dir.sessions.is_dir() and data_dir.logs.is_dir()
    assert console_lock_holder(data_dir) is None


def test_several_consoles_share_one_data_dir_and_keep_maintenance_out(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "shared")
    with prepared_console(ConsoleSettings(data_dir=data_dir.root)) as first:
        assert first.pending_upgrade is not None
        first.pending_upgrade()
        with prepared_console(ConsoleSettings(data_dir=data_dir.root)) as second:
            assert second.first_run is True  # the second console starts too, on the same database
            with pytest.raises(DatabaseInUseError, match="database in use"):
                with hold_database_exclusively(data_dir):
                    pass
        # The first console still holds it: maintenance waits until every console has closed.
        with pytest.raises(DatabaseInUseError):
            with hold_database_exclusively(data_dir):
                pass
    with hold_database_exclusively(data_dir):
        assert console_lock_holder(data_dir) == os.getpid()


def test_a_console_is_refused_while_maintenance_holds_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = DataDir(tmp_path / "busy").ensure()
    with hold_console_lock(data_dir):
        assert main(["--data-dir", str(data_dir.root)]) == 1
    err = capsys.readouterr().err
    assert err == f"tosca: database in use by process {os.getpid()}\n"
    assert schema_revision(data_dir.db_path) is None  # nothing was migrated under someone else's lock


def test_a_damaged_database_stops_the_start_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = DataDir(tmp_path / "damaged").ensure()
    data_dir.db_path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    assert main(["--data-dir", str(data_dir.root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tosca: ") and err.count("\n") == 1
    assert console_lock_holder(data_dir) is None


def test_the_first_screen_needs_no_database_library_nor_socket_protocol(tmp_path: Path) -> None:
    """What the console loads before its first screen: not SQLAlchemy, not pydantic, not the controller's
    messages (each costs a tenth of a second or more of the cold start; they load behind the screen)."""
    code = (
        "import argparse, json, sys\n"
        "from tui.commands.console import settings_from_args\n"
        "from tui.app import make_app\n"
        "from tui.screens import FirstRunScreen, LoginScreen\n"
        "from tui.widgets.camera import CameraPreview, use_halfblocks\n"
        "use_halfblocks()\n"
        f"args = argparse.Namespace(data_dir={str(tmp_path)!r}, sim=True, kiosk=False)\n"
        "app = make_app(settings_from_args(args))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = ("sqlalchemy", "pydantic", "alembic", "control.messages", "control.ipc")
    assert not [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in heavy)]
    assert "textual.app" in loaded  # the check itself imported what it meant to
