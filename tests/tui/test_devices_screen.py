"""The Devices screen and the remote console, in Pilot: a remote console on observe.sock of a real controller
(simulated rig, in-process) logs in through the controller, shows each device's identity and readings, and
refuses everything that would arm, treat or stop; snapshots of the screen at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, TECH_PASSWORD, enter_text, make_settings, showing
from console_fixtures import wait_until as pilot_wait
from remote_fixtures import (
    ENGINEER_PASSWORD,
    notifications,
    remote_console,
    remote_log_in,
    sim_controller,
)
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Label

import tui
from control import messages as msg
from control.account_rules import UserInfo
from control.controller import Controller
from control.ipc_errors import CommandFailed, ControllerUnavailable
from tests.support import FakeClock
from tui.app import ToscaApp
from tui.cli import main
from tui.link import OBSERVE_REFUSAL
from tui.screens._base import ScreenContext, SessionRequested
from tui.screens.devices import DevicesScreen
from tui.screens.home import HomeScreen
from tui.screens.login import LoginScreen

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


@pytest.fixture
async def controller(data_dir: Path) -> AsyncIterator[Controller]:
    async with sim_controller() as ctl:
        yield ctl


def audit(action: str) -> list[tuple[str | None, str, str | None, dict[str, Any]]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT username, outcome, terminal, details FROM audit_log WHERE action = ? ORDER BY audit_id",
            (action,),
        ).fetchall()
    return [(u, o, t, json.loads(d or "{}")) for u, o, t, d in rows]


def screen_text(app: ToscaApp) -> str:
    return " ".join(str(label.render()) for label in app.screen.query(Label))


def table_text(screen: DevicesScreen) -> str:
    table: DataTable[Any] = screen.query_one("#device-table", DataTable)
    return "\n".join(" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count))


async def test_a_remote_engineer_sees_the_simulated_rigs_devices_and_logging_out_ends_the_console(
    controller: Controller, clock: FakeClock
) -> None:
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        # A wrong password first: the controller refuses it, and records it with where it came from.
        await pilot_wait(pilot, lambda: showing(app, LoginScreen), "the login screen")
        await enter_text(pilot, "eric")
        await pilot.press("enter")
        await enter_text(pilot, "not it")
        await pilot.press("enter")
        await pilot_wait(pilot, lambda: "wrong username or password" in screen_text(app), "the refusal")
        # The password field is cleared and keeps the focus: the right one now.
        await enter_text(pilot, ENGINEER_PASSWORD)
        await pilot.press("enter")
        await pilot_wait(pilot, lambda: showing(app, HomeScreen), "the home screen")
        assert not app.screen.query("#stop-key"), "no stop key on a console whose link has none"
        await pilot.press("d")
        await pilot_wait(pilot, lambda: showing(app, DevicesScreen), "the devices screen")
        screen = app.screen
        assert isinstance(screen, DevicesScreen)
        await pilot_wait(pilot, lambda: "SIM-6310-0001" in table_text(screen), "the laser's serial number")
        rows = table_text(screen)
        assert "Arroyo 6310" in rows and "Arroyo 5305" in rows and "SIM-5305-0001" in rows
        assert "protocol 3." in rows
        readings = str(screen.query_one("#readings", Label).render())
        assert readings.startswith("laser on ") and "output:" in readings
        loop = str(screen.query_one("#loop", Label).render())
        assert "simulated rig" in loop and "loop lag p50" in loop
        origin = str(screen.query_one("#origin", Label).render())
        assert "ssh from 192.0.2.9 as eng1" in origin
        await pilot.press("down")
        await pilot_wait(
            pilot,
            lambda: str(screen.query_one("#readings", Label).render()).startswith("tec"),
            "TEC readings",
        )
        await pilot.press("escape")
        await pilot_wait(pilot, lambda: showing(app, HomeScreen), "home again")
        await pilot.press("ctrl+o")
        await pilot_wait(pilot, lambda: app.return_code == 0, "the console to end at logout")
    logins = [row for row in audit("login") if row[3].get("console") == "remote"]
    assert [(u, o, t) for u, o, t, _ in logins] == [
        ("eric", "failure", "ssh:192.0.2.9"),
        ("eric", "success", "ssh:192.0.2.9"),
    ]
    assert logins[1][3]["ssh_client"] == "192.0.2.9" and logins[1][3]["via"] == "observe.sock"
    assert [(u, t) for u, _, t, _ in audit("logout")] == [("eric", "ssh:192.0.2.9")]


async def test_the_remote_console_refuses_treating_stopping_and_arming_with_the_reason(
    controller: Controller, clock: FakeClock
) -> None:
    app = remote_console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await remote_log_in(pilot, "tina", TECH_PASSWORD)
        app.post_message(SessionRequested("P-1", "constant_3w_120s"))
        await pilot_wait(pilot, lambda: OBSERVE_REFUSAL in notifications(app), "the session refused")
        await pilot.press("f12")
        await pilot_wait(pilot, lambda: "STOP is not on the remote console" in notifications(app), "F12")
        assert app.link is not None
        for command in (msg.Arm(password=TECH_PASSWORD), msg.Stop(), msg.Sim(command="pedal down")):
            with pytest.raises(CommandFailed, match="not on the remote console"):
                await app.link.call(command)
        assert controller.session is None and controller.supervisor.state.value == "idle"
        assert app.exit_refusal() is None  # the remote console may always close


# -- the screen on its own: canned figures -------------------------------------------------------------


def canned_reply() -> msg.DevicesReply:
    def device(name: str, state: str, **fields: Any) -> msg.DeviceDiagnostics:
        return msg.DeviceDiagnostics(name=name, state=state, **fields)

    return msg.DevicesReply(
        sim=True,
        state="fault",  # type: ignore[arg-type]
        devices=[
            device(
                "laser",
                "open",
                port="/dev/pts/7",
                model="Arroyo 6310",
                serial="SIM-6310-0001",
                firmware="1.6 build sim",
                identity="Arroyo 6310 serial SIM-6310-0001 version 1.6 build sim",
                replies=5120,
                bad_replies=0,
                last_reply_age_s=0.012,
                readings=[
                    msg.ReadingView(name="output", value="off"),
                    msg.ReadingView(name="diode current", value="0.0 mA"),
                ],
            ),
            device(
                "tec",
                "open",
                model="Arroyo 5305",
                serial="SIM-5305-0001",
                firmware="1.2 build sim",
                replies=4410,
                bad_replies=2,
                last_reply_age_s=0.02,
            ),
            device(
                "actuator",
                "faulty",
                replies=300,
                bad_replies=3,
                last_reply_age_s=2.5,
                last_error="timeout: no reply to 'STAT?'",
            ),
            device(
                "safety",
                "open",
                model="TOSCA safety board",
                firmware="protocol 3.1",
                replies=9000,
                bad_replies=0,
                last_reply_age_s=0.004,
            ),
            device("camera", "ok", model="[b]sim camera[/b] 640x480"),
        ],
        loop=msg.LoopFigures(
            lag_p50_ms=0.21,
            lag_p99_ms=1.7,
            lag_max_ms=3.2,
            samples=1200,
            window_s=60.0,
            cpu_percent=14.0,
            uptime_s=600.0,
        ),
        faults=[msg.FaultReaction(at="2026-03-14T09:31:02", what="E-stop pressed", reaction_ms=0.31)],
    )


class DevicesApp(App[None]):
    """The console's stylesheet and the Devices screen with a fixed answer (or a failing one)."""

    CSS_PATH = Path(tui.__file__).parent / "tosca.tcss"

    def __init__(self, clock: FakeClock, fetch: Callable[[], Any]) -> None:
        super().__init__()
        self.context = ScreenContext(settings=make_settings(clock, controller="off", sim=True))
        self.fetch = fetch

    async def on_mount(self) -> None:
        user = UserInfo(
            tech_id=3,
            username="eric",
            full_name="Eric Engineer",
            role="engineer",
            is_active=True,
            has_password=True,
            must_change_password=False,
            failed_login_count=0,
            locked_until=None,
            last_login=None,
            created_date=None,
        )
        await self.push_screen(DevicesScreen(self.context, user, fetch=self.fetch, refresh_s=None))


async def _fixed() -> msg.DevicesReply:
    return canned_reply()


async def test_no_answer_is_said_on_the_screen(clock: FakeClock) -> None:
    async def failing() -> msg.DevicesReply:
        raise ControllerUnavailable("no controller at data/observe.sock: [Errno 2] No such file")

    app = DevicesApp(clock, failing)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_wait(
            pilot, lambda: isinstance(app.screen, DevicesScreen) and bool(app.screen.problem), "x"
        )
        status = app.screen.query_one("#status", Label)
        assert "no figures from the controller: no controller at" in str(status.render())
        assert status.has_class("error")


async def test_device_strings_are_drawn_as_text(clock: FakeClock) -> None:
    app = DevicesApp(clock, _fixed)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_wait(
            pilot, lambda: isinstance(app.screen, DevicesScreen) and app.screen.reply is not None, "x"
        )
        screen = app.screen
        assert isinstance(screen, DevicesScreen)
        assert "[b]sim camera[/b]" in table_text(screen)
        faults = str(screen.query_one("#faults", Label).render())
        assert "0.31 ms" in faults and "E-stop pressed" in faults


@pytest.mark.parametrize("size", SIZES)
def test_devices_snapshot(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any) -> None:
    async def shown(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await pilot_wait(
            pilot, lambda: isinstance(app.screen, DevicesScreen) and app.screen.reply is not None, "x"
        )
        await pilot.pause()

    assert snap_compare(DevicesApp(clock, _fixed), terminal_size=size, run_before=shown)


# -- tosca remote: what stops it from starting ----------------------------------------------------------


def test_tosca_remote_without_a_controller_says_so(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.cli import main

    assert main(["--data-dir", str(DATA_DIR), "remote"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tosca: remote: no controller to observe: ") and "observe.sock" in err
    assert err.count("\n") == 1


async def test_tosca_remote_on_a_database_without_an_administrator_says_so(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE tech_users SET is_active = 0 WHERE role = 'admin'")
    code = await asyncio.to_thread(main, ["--data-dir", str(DATA_DIR), "remote"])
    assert code == 1
    assert capsys.readouterr().err == (
        "tosca: remote: no administrator yet: create the first one at the kiosk's console\n"
    )
