"""What the remote console does and refuses, in Pilot, against a real controller on the simulated rig
(in-process, its ``observe.sock``): the ring size wizard moves the actuator with the engineer's password,
takes the typed diameters and has the controller store the calibration; backups, their verification, the
research export and the audit trail's CSV are made by the controller for the person logged in, audited with
where the console is used from; the laser power wizard, the focus stack key, a restore and the screens that
write the records are refused with the reason before anything is tried (nothing written, no SQLite error)."""

from __future__ import annotations

import getpass
import json
import os
import pwd
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from console_fixtures import ADMIN_PASSWORD, DATA_DIR, enter_text, showing
from console_fixtures import wait_until as pilot_wait
from remote_fixtures import (
    ENGINEER_PASSWORD,
    notifications,
    remote_console,
    remote_log_in,
    sim_controller,
)
from textual.widgets import DataTable, Input, OptionList, Static

from control import messages as msg
from control.controller import Controller
from control.ipc_errors import CommandFailed
from tests.support import RIG_TEST, FakeClock
from tui.app import ToscaApp
from tui.remote import KIOSK_ONLY_ACTIONS, KIOSK_ONLY_SCREENS
from tui.screens.audit import AuditScreen
from tui.screens.backups import BackupsScreen
from tui.screens.calibration import CalibrationScreen, LaserPowerWizard, RingSizeWizard
from tui.screens.camera_focus import CameraFocusScreen
from tui.screens.dialogs import ConfirmDialog
from tui.screens.export import ExportScreen
from tui.screens.home import HomeScreen

#: A controller on the simulated rig in this process for tens of seconds per test: one at a time with the
#: other rig tests, so that it does not starve their controllers of the CPU.
pytestmark = RIG_TEST


@pytest.fixture
async def controller(data_dir: Path) -> AsyncIterator[Controller]:
    async with sim_controller() as ctl:
        yield ctl


def screen_text(app: ToscaApp) -> str:
    return " ".join(str(label.render()) for label in app.screen.query(Static))


def rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return db.execute(sql, args).fetchall()


async def test_the_ring_size_wizard_moves_the_actuator_from_the_remote_console_and_the_laser_one_is_refused(
    controller: Controller, clock: FakeClock
) -> None:
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await remote_log_in(pilot, "eric", ENGINEER_PASSWORD)
        await pilot.press("w")
        await pilot_wait(pilot, lambda: showing(app, CalibrationScreen), "the calibration screen")
        # The laser power wizard emits: refused here, with the reason, and nothing asked of the controller.
        await pilot.press("l")
        await pilot_wait(pilot, lambda: "kiosk only" in screen_text(app), "the laser wizard refused")
        assert KIOSK_ONLY_ACTIONS["calibration.laser"] in screen_text(app)
        assert not showing(app, LaserPowerWizard)
        await pilot.press("r")
        await pilot_wait(pilot, lambda: showing(app, RingSizeWizard), "the ring size wizard")
        await pilot.press("escape")
        await pilot_wait(pilot, lambda: showing(app, CalibrationScreen), "back from the wizard")
        # The same wizard over fewer, shorter moves (the simulated stage moves at its real speed).
        app.push_screen(RingSizeWizard(app.context, app.screen.user, positions_um=(0.0, 150.0, 300.0)))
        await pilot_wait(pilot, lambda: showing(app, RingSizeWizard), "the short ring size wizard")
        # A wrong password: the controller refuses the move and the password is asked again.
        await enter_text(pilot, "not it")
        await pilot.press("enter")
        await pilot_wait(pilot, lambda: "Your password again" in screen_text(app), "the move refused")
        assert "refused:" in screen_text(app) and "not on the remote console" not in screen_text(app)
        await enter_text(pilot, ENGINEER_PASSWORD)
        await pilot.press("enter")
        for n, ring in enumerate(("2.5", "3.0", "3.5"), 1):
            await pilot_wait(
                pilot, lambda n=n: f"Point {n} of 3: actuator at" in screen_text(app), f"point {n}", 30.0
            )
            if n == 1:
                # The previews reach the remote console too: the camera sees the ring, but no camera scale
                # calibration is active here, so its measurement is not offered.
                await pilot_wait(
                    pilot,
                    lambda: "no active camera scale calibration" in screen_text(app),
                    "why the camera's measurement is not offered",
                )
                assert "camera's measurement not offered: ring" in screen_text(app)
            await enter_text(pilot, ring)
            await pilot.press("enter")
        await pilot_wait(pilot, lambda: "Every position measured" in screen_text(app), "every point")
        assert controller.rig.actuator is not None
        assert controller.readouts.position_um == pytest.approx(300.0, abs=5.0)
        assert "r squared" in screen_text(app)
        # The remote console's records are read-only: the controller stores it, as the active one.
        await pilot.press("f5")
        await pilot_wait(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await pilot_wait(pilot, lambda: "saved as active" in screen_text(app), "the calibration saved")
        assert app.link is not None
        # Points the calibration rules refuse are refused by the controller too, and nothing is stored.
        with pytest.raises(CommandFailed, match="not saved"):
            await app.link.call(
                msg.CalibrationSaveRing(
                    points=[[0.0, 3.0], [100.0, 2.0], [200.0, 4.0]],
                    username="eric",
                    password=ENGINEER_PASSWORD,
                )
            )
        # Points said to come from the camera must name the camera scale they were measured through.
        good = [[0.0, 2.0], [100.0, 2.1], [200.0, 2.2]]
        refused: list[tuple[list[Literal["typed", "camera"]], str]] = [
            (["camera", "typed", "camera"], "must name the camera scale calibration used"),
            (["typed", "typed"], "2 point sources for 3 points"),
        ]
        for sources, reason in refused:
            with pytest.raises(CommandFailed, match=reason):
                await app.link.call(
                    msg.CalibrationSaveRing(
                        points=good, username="eric", password=ENGINEER_PASSWORD, point_sources=sources
                    )
                )
    [(made_by, active, data)] = rows(
        "SELECT u.username, c.is_active, c.calibration_data FROM calibrations c JOIN tech_users u "
        "ON u.tech_id = c.tech_id WHERE c.calibration_type = 'actuator_position_to_ring_size' "
        "AND c.notes = 'ring size wizard; points 1, 2, 3 typed'"
    )
    assert made_by == "eric" and active == 1 and len(json.loads(data)["calibration_points"]) == 3
    [(terminal,)] = rows("SELECT terminal FROM audit_log WHERE action = 'calibration_saved'")
    assert terminal.startswith("observe:")
    commands = rows("SELECT username, outcome, details FROM audit_log WHERE action = 'control_command'")
    moves = [(u, o) for u, o, d in commands if json.loads(d or "{}").get("command") == "calibration_move"]
    assert moves == [("eric", "failure")] + [("eric", "success")] * 3
    events = rows("SELECT description FROM safety_log WHERE event_type = 'calibration_move'")
    assert len(events) == 3 and all("by eric" in e for (e,) in events)


async def test_a_remote_admin_is_told_which_screens_and_actions_are_kiosk_only_and_nothing_is_written(
    controller: Controller, clock: FakeClock
) -> None:
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        home = await remote_log_in(pilot, "ada", ADMIN_PASSWORD)
        menu = home.query_one("#home-menu", OptionList)
        for name in ("users", "configuration", "protocol_library", "subjects"):
            option = menu.get_option(name)
            assert option.disabled and "(kiosk only)" in str(option.prompt), name
        for name in ("records", "backups", "audit", "devices", "safety_events"):
            option = menu.get_option(name)
            assert not option.disabled and "kiosk only" not in str(option.prompt), name
        await pilot.press("u")
        await pilot_wait(pilot, lambda: KIOSK_ONLY_SCREENS["users"] in notifications(app), "users refused")
        assert showing(app, HomeScreen)
        await pilot.press("c")
        await pilot_wait(
            pilot, lambda: "the records are read-only here" in notifications(app), "configuration refused"
        )
        assert showing(app, HomeScreen)
        # A restore replaces the records: refused here, nothing asked.
        assert app.link is not None
        await app.link.call(msg.RemoteBackup())
        await pilot.press("b")
        await pilot_wait(pilot, lambda: showing(app, BackupsScreen), "the backups screen")
        await pilot_wait(pilot, lambda: "1 backup;" in screen_text(app), "the backup listed")
        await pilot.press("r")
        await pilot_wait(
            pilot, lambda: KIOSK_ONLY_ACTIONS["backups.restore"] in screen_text(app), "the restore refused"
        )
        assert not showing(app, ConfirmDialog)
        # The audit trail's CSV: the controller writes it for the admin, and says how to fetch it.
        app.push_screen(AuditScreen(app.context, app.screen.user))
        await pilot_wait(pilot, lambda: showing(app, AuditScreen), "the audit trail")
        await pilot.press("f5")
        await pilot_wait(pilot, lambda: "fetch-export audit_" in screen_text(app), "the CSV exported", 20.0)
    [csv_file] = list((DATA_DIR / "exports").iterdir())
    assert csv_file.name.startswith("audit_") and csv_file.stat().st_mode & 0o777 == 0o640
    assert "ada" in csv_file.read_text(encoding="utf-8")
    [(user, terminal, details)] = rows(
        "SELECT username, terminal, details FROM audit_log WHERE action = 'audit_export'"
    )
    origin = json.loads(details)
    assert (user, terminal, origin["ssh_client"], origin["console"]) == (
        "ada",
        "ssh:192.0.2.9",
        "192.0.2.9",
        "remote",
    )


async def test_the_remote_focus_screen_shows_the_live_score_and_refuses_the_stack_with_the_reason(
    controller: Controller, clock: FakeClock
) -> None:
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await remote_log_in(pilot, "eric", ENGINEER_PASSWORD)
        await pilot.press("f")
        await pilot_wait(pilot, lambda: showing(app, CameraFocusScreen), "the camera focus screen")
        # The previews reach observe.sock: the score is live here.
        await pilot_wait(
            pilot, lambda: app.link is not None and app.link.preview is not None, "a preview", 20.0
        )
        await pilot_wait(pilot, lambda: "focus: no preview" not in screen_text(app), "the score line", 20.0)
        await pilot.press("r")
        await pilot_wait(pilot, lambda: "focus stack refused" in screen_text(app), "the stack refused")
        assert "taken at the kiosk" in screen_text(app)
    folder = DATA_DIR / "calibrations" / "camera"
    assert not folder.exists() or not any(folder.iterdir())


SEED_PROTOCOL = "Seed example (60 s at 5 W, 30 s ramp to 8 W)"


async def test_a_remote_engineer_backs_up_verifies_and_exports_through_the_controller(
    controller: Controller, clock: FakeClock
) -> None:
    ended = await controller.open_session(
        subject_code="P-2026-0042", username="ada", protocol_name=SEED_PROTOCOL, create_subject=True
    )
    await controller.abort("ended for the export")
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await remote_log_in(pilot, "eric", ENGINEER_PASSWORD)
        await pilot.press("b")
        await pilot_wait(pilot, lambda: showing(app, BackupsScreen), "the backups screen")
        await pilot.press("b")
        await pilot_wait(pilot, lambda: "backed up to tosca_" in screen_text(app), "the backup made", 20.0)
        assert "integrity ok" in screen_text(app)
        made = re.search(r"backed up to (tosca_\S+\.db)", screen_text(app))
        assert made is not None and (DATA_DIR / "backups" / made[1]).is_file()
        # The list is read again with the new backup highlighted: v verifies it.
        table = app.screen.query_one("#backup-table", DataTable)
        await pilot_wait(
            pilot, lambda: made[1] in str(table.get_row_at(table.cursor_row)[-1]), "the backup highlighted"
        )
        await pilot.press("v")
        await pilot_wait(pilot, lambda: f"{made[1]} verified" in screen_text(app), "the backup verified")
        # The export screen, opened with the session filled in (as F6 on the safety log browser does).
        app.push_screen(ExportScreen(app.context, app.screen.user, session_id=ended.session_id))
        await pilot_wait(pilot, lambda: showing(app, ExportScreen), "the export screen")
        await pilot.press("ctrl+s")
        await pilot_wait(pilot, lambda: "fetch-export" in screen_text(app), "the export written", 20.0)
        text = screen_text(app)
        [folder] = list((DATA_DIR / "exports").iterdir())
        assert f"exported session {ended.session_id} (de-identified" in text
        assert f"ssh -T {getpass.getuser()}@" in text
        assert f"fetch-export {folder.name} > {folder.name}.tar" in text
        # A session still open is not exported (as at the kiosk): refused with the reason, nothing written.
        still_open = await controller.open_session(
            subject_code="P-2026-0042", username="ada", protocol_name=SEED_PROTOCOL
        )
        app.screen.query_one("#field-session", Input).value = str(still_open.session_id)
        await pilot.press("ctrl+s")
        await pilot_wait(pilot, lambda: "is still open" in screen_text(app), "the open session refused")
        assert list((DATA_DIR / "exports").iterdir()) == [folder]
    assert (folder / "manifest.json").is_file()
    assert not any(path.stat().st_mode & 0o007 for path in [folder, *folder.rglob("*")])
    unix_user = pwd.getpwuid(os.getuid()).pw_name
    for action in ("db_backup", "db_backup_verify", "research_export"):
        [(user, outcome, terminal, details)] = rows(
            "SELECT username, outcome, terminal, details FROM audit_log "
            "WHERE action = ? AND username = 'eric'",
            action,
        )
        origin = json.loads(details)
        assert (user, outcome, terminal) == ("eric", "success", "ssh:192.0.2.9"), action
        assert origin["ssh_client"] == "192.0.2.9" and origin["unix_user"] == unix_user, action
        assert origin["peer_pid"] == os.getpid() and origin["console"] == "remote", action
