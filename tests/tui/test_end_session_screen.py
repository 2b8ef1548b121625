"""The end-of-session screen: notes, summary, events and power trace.

Pilot tests run a real short session on an in-process controller on the simulated rig, then show the screen
with a real :class:`tui.link.ConsoleLink` to that controller, and check what the technician would notice: the
summary numbers, the status line, the notes in the database, the confirmation asked for empty notes.
Snapshots use fixed rows and a fixed telemetry file written by the test, so they never change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    DATA_DIR,
    FakeClock,
    make_settings,
    seed_sync,
    showing,
    status_text,
    tables_measured,
    wait_until,
)
from textual import events
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, Select, Static, TextArea

import tui
from control.accounts import AccountService, UserInfo
from control.controller import Controller
from control.review import load_review
from storage import DataDir, create_engine, session_factory
from storage.telemetry_line import TelemetrySample
from tests.support import CHEAP
from tui.link import ConsoleLink
from tui.screens._base import ScreenContext, SessionFinished
from tui.screens.dialogs import ConfirmDialog
from tui.screens.end_session import (
    EndOfSessionScreen,
    SignDialog,
    format_energy,
    format_seconds,
    format_steps,
    format_watts,
)
from tui.widgets.plot import PowerPlot

# The controller helpers live beside the controller tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control"))
from controller_fixtures import (
    PASSWORD,
    USERNAME,
    open_and_treat,
    prepare_data_dir,
    wait_session_end,
)

from tests.support import protocol_json

SnapCompare = Callable[..., bool]
TOSCA_CSS = Path(tui.__file__).parent / "tosca.tcss"
# One step of 1.5 s at 2 W: the shortest real session worth reviewing (expected energy 3 J).
ONE_STEP = protocol_json((1.5, 2.0, 2.0, 2.0, "constant"))
# One step of a minute: a session still open while the screen is shown.
LONG_STEP = protocol_json((60.0, 2.0, 2.0, 2.0, "constant"))


class Host(App[None]):
    """The console's styles around one end-of-session screen; records the SessionFinished messages."""

    CSS_PATH = str(TOSCA_CSS)

    def __init__(self, settings_clock: FakeClock, user: UserInfo, session_id: int, link: Any) -> None:
        super().__init__()
        self._engine = create_engine(DATA_DIR / "tosca.db")
        settings = make_settings(settings_clock, sim=True)
        accounts = AccountService(sessions=session_factory(self._engine), terminal="/dev/tty1", hashing=CHEAP)
        self.context = ScreenContext(settings=settings, accounts=accounts, link=link)
        self.user = user
        self.session_id = session_id
        self.finished: list[int] = []

    def on_mount(self) -> None:
        self.push_screen(EndOfSessionScreen(self.context, self.user, self.session_id))

    async def on_unmount(self) -> None:
        await self._engine.dispose()

    def on_session_finished(self, message: SessionFinished) -> None:
        self.finished.append(message.session_id)


async def user_info(username: str) -> UserInfo:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/tty1", hashing=CHEAP)
        user = await accounts.get_user(username)
    finally:
        await engine.dispose()
    assert user is not None
    return user


def db_row(query: str, *params: Any) -> tuple[Any, ...]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        row = db.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def fact(pilot: Pilot[Any], name: str) -> str:
    return str(pilot.app.screen.query_one(f"#fact-{name}", Static).render())


async def review_shown(pilot: Pilot[Any]) -> EndOfSessionScreen:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end-of-session screen")
    screen = app.screen
    assert isinstance(screen, EndOfSessionScreen)
    await wait_until(pilot, lambda: screen.review is not None, "the session review")
    return screen


async def paste_notes(pilot: Pilot[Any], text: str) -> None:
    """Put ``text`` in the notes field as a paste would (one key press per character takes the test's
    pilot about a second each while the controller shares its process)."""
    notes = pilot.app.screen.query_one("#notes", TextArea)
    assert pilot.app.focused is notes
    before = notes.text
    pilot.app.post_message(events.Paste(text))  # the app hands a paste to the focused widget
    await wait_until(pilot, lambda: notes.text == before + text, "the pasted notes")


async def saved(pilot: Pilot[Any], screen: EndOfSessionScreen) -> None:
    await wait_until(pilot, lambda: not screen.busy, "the save to finish")


async def sign(pilot: Pilot[Any], password: str) -> SignDialog:
    """Answer the signature dialog with ``password`` (set at once: typing is slow beside a controller)."""
    await wait_until(pilot, lambda: showing(pilot.app, SignDialog), "the signature dialog")
    dialog = pilot.app.screen
    assert isinstance(dialog, SignDialog)
    assert str(dialog.query_one("#sign-meaning", Select).value) == "performed by"
    dialog.field("sign-password").value = password
    await pilot.press("enter")
    return dialog


# ---- a real session on the simulated rig


@dataclass
class Rig:
    controller: Controller
    link: ConsoleLink
    user: UserInfo

    async def connect(self) -> None:
        """Connect the link and authenticate it for the technician, as the console does after its login."""
        self.link.start()
        await self.link.wait_connected(10.0)
        await self.link.sign_in(USERNAME, PASSWORD)


@dataclass
class Live:
    controller: Controller
    link: ConsoleLink
    session_id: int
    user: UserInfo


@pytest.fixture
async def rig(data_dir: Path, migrated_template: Path) -> AsyncIterator[Rig]:
    """A controller on the simulated rig with the technician and two protocols, and a console link."""
    await prepare_data_dir(DATA_DIR, migrated_template, {"one-step": ONE_STEP, "long": LONG_STEP})
    controller = Controller(DATA_DIR, sim=True, hashing=CHEAP, terminal="test")
    await controller.start()
    link = ConsoleLink(
        DATA_DIR,
        sim=True,
        on_message=lambda _m: None,
        on_state=lambda _ok, _why: None,
        start_controller=False,
    )
    try:
        yield Rig(controller, link, await user_info(USERNAME))
    finally:
        await link.close()
        await controller.close()


@pytest.fixture
async def live(rig: Rig) -> Live:
    """The controller has just run (and closed) one short session; the link is connected."""
    session_id = await open_and_treat(rig.controller, "one-step")
    await wait_session_end(rig.controller, 20.0)
    await rig.connect()
    return Live(rig.controller, rig.link, session_id, rig.user)


async def test_notes_typed_and_saved_reach_the_record(live: Live, clock: FakeClock) -> None:
    app = Host(clock, live.user, live.session_id, live.link)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        # The summary numbers on screen are the session row's.
        avg, peak, energy, on_time, status = db_row(
            "SELECT avg_power_watts, max_power_watts, total_energy_joules, total_laser_on_time_seconds, "
            "status FROM sessions WHERE session_id = ?",
            live.session_id,
        )
        assert status == "completed" and fact(pilot, "status") == "completed"
        assert fact(pilot, "avg") == format_watts(avg) == f"{avg:.2f} W"
        assert fact(pilot, "max") == f"{peak:.2f} W"
        assert fact(pilot, "energy") == f"{energy:.2f} J of 3.00 J planned"
        assert fact(pilot, "laser-on") == f"{on_time:.1f} s"
        assert fact(pilot, "steps") == "1 of 1"
        table = screen.query_one("#events", DataTable)
        kinds = [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]
        assert kinds[0] == "session_open" and kinds[-1] == "session_completed"
        assert "laser_on" in kinds and "state_change" in kinds
        plot = screen.query_one("#trace-plot", PowerPlot)
        assert plot.series_keys == ["commanded", "measured"]

        assert isinstance(app.focused, TextArea)
        await paste_notes(pilot, "no redness\nskin intact")
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        await sign(pilot, PASSWORD)
        await wait_until(pilot, lambda: app.finished == [live.session_id], "the session finished")
        assert "signed; session finished" in status_text(pilot)
    (notes,) = db_row("SELECT post_treatment_notes FROM sessions WHERE session_id = ?", live.session_id)
    assert notes == "no redness\nskin intact"
    assert db_row(
        "SELECT kind, meaning, printed_name FROM session_records WHERE session_id = ? "
        "ORDER BY record_id DESC",
        live.session_id,
    ) == ("signature", "performed by", live.user.full_name)


async def test_a_wrong_password_signs_nothing_and_the_session_waits_for_its_signature(
    live: Live, clock: FakeClock
) -> None:
    app = Host(clock, live.user, live.session_id, live.link)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        await paste_notes(pilot, "fine")
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        dialog = await sign(pilot, "wrong password")
        error = dialog.query_one("#dialog-error", Label)
        await wait_until(pilot, lambda: "not signed: wrong" in str(error.render()), "the refusal")
        assert app.screen is dialog and dialog.field("sign-password").value == ""
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen, "back on the end-of-session screen")
        assert "not signed yet: ctrl+s signs it" in status_text(pilot)
        assert app.finished == []
        await pilot.press("ctrl+s")  # the notes are saved: only the signature is asked again
        await sign(pilot, PASSWORD)
        await wait_until(pilot, lambda: app.finished == [live.session_id], "the session finished")
    assert db_row("SELECT count(*) FROM audit_log WHERE action = 'session_sign' AND outcome = 'failure'") == (
        1,
    )
    assert db_row("SELECT count(*) FROM session_records WHERE kind = 'signature'") == (1,)


async def test_typing_with_the_focus_on_another_pane_goes_into_the_notes(
    live: Live, clock: FakeClock
) -> None:
    app = Host(clock, live.user, live.session_id, live.link)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await review_shown(pilot)
        notes = screen.query_one("#notes", TextArea)
        assert "what you type goes here" in str(screen.query_one("#notes-label", Label).render())
        await pilot.press("tab", "tab")
        assert app.focused is not notes and app.focused is not None
        await pilot.press("o", "k")  # typed on the events pane
        assert notes.text == "ok" and app.focused is notes
        await pilot.press("tab", "tab")
        assert app.focused is not notes
        app.post_message(events.Paste(", fine"))  # pasted on the events pane
        await wait_until(pilot, lambda: notes.text == "ok, fine", "the pasted notes")
        assert app.focused is notes
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        await sign(pilot, PASSWORD)
        await wait_until(pilot, lambda: app.finished == [live.session_id], "the session finished")
    (kept,) = db_row("SELECT post_treatment_notes FROM sessions WHERE session_id = ?", live.session_id)
    assert kept == "ok, fine"


async def test_empty_notes_ask_for_confirmation(live: Live, clock: FakeClock) -> None:
    app = Host(clock, live.user, live.session_id, live.link)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        await paste_notes(pilot, "  \n ")  # only blanks: counts as no notes
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        assert app.finished == []
        await pilot.press("y")
        await wait_until(pilot, lambda: showing(app, SignDialog), "the signature dialog")
        shown = str(screen.query_one("#status", Label).render())
        assert app.finished == [] and "no notes; sign the session" in shown
        await sign(pilot, PASSWORD)
        await wait_until(pilot, lambda: app.finished == [live.session_id], "SessionFinished")
        assert app.screen is screen
    (notes,) = db_row("SELECT post_treatment_notes FROM sessions WHERE session_id = ?", live.session_id)
    assert notes is None


async def test_a_refusal_or_a_lost_controller_keeps_the_notes(rig: Rig, clock: FakeClock) -> None:
    # Shown too early: the session is still treating, so the controller refuses the notes.
    session_id = await open_and_treat(rig.controller, "long")
    await rig.connect()
    app = Host(clock, rig.user, session_id, rig.link)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        assert fact(pilot, "status") in {"in_progress", "paused"}, "still open"
        notes = screen.query_one("#notes", TextArea)
        await paste_notes(pilot, "second thoughts")
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        assert "not saved: the session is still open" in status_text(pilot)
        assert notes.text == "second thoughts" and not notes.read_only

        await rig.controller.close()  # laser off, the session closed as aborted, the sockets gone
        await wait_until(pilot, lambda: not rig.link.connected, "the link to notice")
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        assert "cannot be reached" in status_text(pilot)
        assert notes.text == "second thoughts"
        assert app.finished == []
    status, kept = db_row(
        "SELECT status, post_treatment_notes FROM sessions WHERE session_id = ?", session_id
    )
    assert status == "aborted" and kept is None


# ---- fixed rows for the snapshots

START = datetime(2026, 3, 14, 9, 0, 0)
FIXED_PROTOCOL = protocol_json((10.0, 2.0, 2.0, 2.0, "constant"), (10.0, 2.0, 4.0, 2.5, "linear"))


def _telemetry_lines() -> bytes:
    """19 s at 10 Hz: step 1 on from 1 s to 11 s with a photodiode dip at 8 s, step 2 from 12.5 s, aborted at
    16 s."""
    lines = []
    for k in range(191):
        t = k / 10
        if 1.0 <= t < 11.0:
            cmd, on = 2.0, True
        elif 12.5 <= t < 16.0:
            cmd, on = 2.0 + 2.0 * (t - 12.0) / 10.0, True
        else:
            cmd, on = 0.0, False
        measured = round(cmd * 0.98, 4) if on else 0.0
        if 8.0 <= t < 8.2:
            measured = 0.5
        sample = TelemetrySample(
            t=t,
            pd_v=measured / 2,
            p_w=measured,
            cmd_w=cmd,
            on=on,
            pedal=on,
            estop=False,
            vib_g=1.0 if on else 0.0,
            enable=on,
            state="treating" if on else "ready",
            pos_um=None,
        )
        lines.append(json.dumps(sample.encode()) + "\n")
    return "".join(lines).encode()


def write_fixed_session() -> int:
    """An aborted two-step session with its events, safety rows and telemetry file; returns its id."""
    seed_sync()
    folder = Path("sessions") / "P-2026-0001" / "1"
    content = _telemetry_lines()
    (DATA_DIR / folder).mkdir(parents=True)
    (DATA_DIR / folder / "telemetry.jsonl").write_bytes(content)

    def at(seconds: float) -> str:
        return (START + timedelta(seconds=seconds)).isoformat(" ", "microseconds")

    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        (tech_id,) = db.execute("SELECT tech_id FROM tech_users WHERE username = 'tina'").fetchone()
        db.execute(
            "INSERT INTO subjects (subject_code, created_by_tech_id) VALUES ('P-2026-0001', ?)", (tech_id,)
        )
        db.execute(
            "INSERT INTO sessions (session_id, subject_id, tech_id, start_time, end_time, duration_seconds, "
            "status, abort_reason, protocol_name, protocol_data_snapshot, session_folder_path, "
            "total_laser_on_time_seconds, avg_power_watts, max_power_watts, total_energy_joules, "
            "telemetry_path, telemetry_line_count, telemetry_sha256) "
            "VALUES (1, 1, ?, ?, ?, 19, 'aborted', 'subject moved', 'ramp_demo', ?, ?, 13.5, 2.04, 2.74, "
            "27.5, ?, ?, ?)",
            (
                tech_id,
                at(0),
                at(19),
                FIXED_PROTOCOL,
                str(folder),
                str(folder / "telemetry.jsonl"),
                content.count(b"\n"),
                hashlib.sha256(content).hexdigest(),
            ),
        )
        override = {
            "action": "protocol_power_override",
            "old_value": 2.6,
            "new_value": 2.5,
            "reason": "subject felt warmth",
            "by": "tina",
            "protocol_step": 2,
        }
        abort = {"action": "abort", "reason": "subject moved", "by": "tina"}
        events = [
            (0.5, "ring_size_change", None, None, 2.0, None),
            (0.6, "protocol_step_start", 2.0, None, 2.0, None),
            (1.0, "laser_on", 2.0, 0.0, 2.0, {"reason": "footpedal pressed", "protocol_step": 1}),
            (11.0, "laser_off", 2.0, 1.96, 2.0, None),
            (11.0, "protocol_step_end", 2.0, None, 2.0, None),
            (12.0, "ring_size_change", None, None, 2.5, None),
            (12.1, "protocol_step_start", 2.0, None, 2.5, None),
            (12.5, "laser_on", 2.1, 0.0, 2.5, None),
            (14.0, "user_action", 2.5, 2.45, 2.5, override),
            (16.0, "user_action", 2.7, 2.65, 2.5, abort),
            (16.0, "laser_off", 2.7, 2.65, 2.5, None),
        ]
        db.executemany(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
            "laser_power_commanded_watts, laser_power_actual_watts, ring_size_mm, event_details) "
            "VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            [
                (at(s), round(s * 1000), kind, cmd, actual, ring, None if d is None else json.dumps(d))
                for s, kind, cmd, actual, ring, d in events
            ],
        )
        safety = [
            (0.3, "state_change", "info", "idle -> ready: session 1 opened for P-2026-0001"),
            (0.9, "state_change", "info", "ready -> armed: armed (key control)"),
            (1.0, "state_change", "info", "armed -> treating: footpedal pressed"),
            (8.2, "photodiode_warning", "warning", "measured 0.50 W is 75 % below the commanded 2.00 W"),
            (11.0, "state_change", "info", "treating -> armed: step ended (laser off)"),
            (12.5, "state_change", "info", "armed -> treating: footpedal pressed"),
            (16.0, "state_change", "info", "treating -> idle: subject moved"),
        ]
        db.executemany(
            "INSERT INTO safety_log (timestamp, session_id, tech_id, event_type, severity, description) "
            "VALUES (?, 1, ?, ?, ?, ?)",
            [(at(s), tech_id, kind, severity, text) for s, kind, severity, text in safety],
        )
    return 1


def fixed_app(clock: FakeClock) -> Host:
    session_id = write_fixed_session()
    user = asyncio.run(user_info("tina"))
    return Host(clock, user, session_id, link=None)


async def test_fixed_rows_read_back_as_written(data_dir: Path, clock: FakeClock) -> None:
    await asyncio.to_thread(write_fixed_session)
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        review = await load_review(session_factory(engine), DataDir(DATA_DIR), 1)
    finally:
        await engine.dispose()
    assert review.trace_problem is None
    assert (review.steps_completed, review.steps_planned) == (1, 2)
    assert format_energy(review.summary.energy_j, review.expected_energy_j) == "27.50 J of 50.00 J planned"
    assert (8.0, 0.5) in review.trace.measured and (8.1, 0.5) in review.trace.measured, "the dip"
    assert review.events[-1].description == "session aborted: subject moved"


async def test_notes_already_recorded_are_shown_read_only(data_dir: Path, clock: FakeClock) -> None:
    app = await asyncio.to_thread(fixed_app, clock)
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE sessions SET post_treatment_notes = 'mild redness' WHERE session_id = 1")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        notes = screen.query_one("#notes", TextArea)
        assert notes.text == "mild redness" and notes.read_only
        assert "already has post-treatment notes" in status_text(pilot)
        await pilot.press("x", "ctrl+s")  # no confirmation asked: only finishing is left
        await saved(pilot, screen)
        assert notes.text == "mild redness"
        assert app.screen is screen and "not connected to the controller" in status_text(pilot)


async def test_declining_the_confirmation_goes_back_to_the_notes(data_dir: Path, clock: FakeClock) -> None:
    app = await asyncio.to_thread(fixed_app, clock)  # no controller: nothing may be sent
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await review_shown(pilot)
        await pilot.press("escape")  # not a way out
        assert app.screen is screen
        assert "must be answered" in status_text(pilot)
        for decline in ("n", "escape"):
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
            await pilot.press(decline)
            await wait_until(pilot, lambda: app.screen is screen, "back to the notes")
            assert isinstance(app.focused, TextArea)
            assert "type the post-treatment notes" in status_text(pilot)
        await pilot.press(*"ok")
        await pilot.press("ctrl+s")
        await saved(pilot, screen)
        assert "not connected to the controller" in status_text(pilot)
        assert screen.query_one("#notes", TextArea).text == "ok"
        assert app.finished == []


def test_formatting() -> None:
    assert format_seconds(None) == "-" and format_seconds(2.04) == "2.0 s"
    assert format_seconds(125.25) == "2 min 05.2 s"
    assert format_watts(None) == "-" and format_watts(2.346) == "2.35 W"
    assert format_energy(None, 3.0) == "-" and format_energy(1.0, None) == "1.00 J"
    assert format_steps(1, None) == "1" and format_steps(2, 3) == "2 of 3"


async def _ready(pilot: Pilot[Any]) -> None:
    await review_shown(pilot)
    await tables_measured(pilot)


def test_snapshot_events_80x24(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(clock), terminal_size=(80, 24), run_before=_ready)


def test_snapshot_trace_120x40(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    async def trace(pilot: Pilot[Any]) -> None:
        await review_shown(pilot)
        await paste_notes(pilot, "redness at the rim, faded after 5 min")
        await pilot.press("ctrl+t")
        await tables_measured(pilot)

    assert snap_compare(fixed_app(clock), terminal_size=(120, 40), run_before=trace)


def test_snapshot_trace_80x24(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    async def trace(pilot: Pilot[Any]) -> None:
        await review_shown(pilot)
        await pilot.press("ctrl+t")
        await tables_measured(pilot)

    assert snap_compare(fixed_app(clock), terminal_size=(80, 24), run_before=trace)


def test_snapshot_events_120x40(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    assert snap_compare(fixed_app(clock), terminal_size=(120, 40), run_before=_ready)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_confirmation(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    async def confirm(pilot: Pilot[Any]) -> None:
        await review_shown(pilot)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(pilot.app, ConfirmDialog), "the confirmation")
        await tables_measured(pilot)

    assert snap_compare(fixed_app(clock), terminal_size=size, run_before=confirm)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_signing(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    async def signing(pilot: Pilot[Any]) -> None:
        screen = await review_shown(pilot)
        await paste_notes(pilot, "redness at the rim, faded after 5 min")
        app = pilot.app
        assert isinstance(app, Host)
        app.push_screen(SignDialog("Sign session 1", app.context, app.user, screen.session_id))
        await wait_until(pilot, lambda: showing(app, SignDialog), "the signature dialog")
        await pilot.press(*"secret")
        await tables_measured(pilot)

    assert snap_compare(fixed_app(clock), terminal_size=size, run_before=signing)
