"""The whole treatment, as a technician does it at the console, against the controller process on the
simulated rig: log in, create a subject, choose a two-step protocol of the library, pass the checks, arm with
the password, press the pedal, release it and press it again mid-step, let the protocol complete, write the
notes and sign. Then the database holds the session, its events and its summary as the controller recorded
them.

It runs its protocol in real time: 10 s at 5 W, then a 5 s ramp to 8 W (the seed's own 90 s protocol is
delivered, with a pedal release, by ``tests/control/test_sim_run.py``).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from console_fixtures import TECH_PASSWORD, FakeClock, enter_text, seed, showing, wait_until
from textual.widgets import DataTable, TextArea
from treatment_fixtures import DATA_DIR, connected, console, controller, log_in, screen_text

from control.protocol_approval import approve_as_system
from storage import create_engine, session_factory
from storage.repositories import ProtocolsRepository
from tests.support import RIG_TEST, protocol_json
from tui.app import ToscaApp
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.end_session import EndOfSessionScreen, SignDialog
from tui.screens.protocols import ProtocolChoiceScreen
from tui.screens.subjects import SubjectFormScreen, SubjectsScreen

pytestmark = RIG_TEST


NOTES = "No redness after treatment. Subject comfortable throughout."
PROTOCOL = "Two steps (10 s at 5 W, 5 s ramp to 8 W)"


async def add_protocol() -> None:
    """The test's protocol, approved, as the library's protocols are."""
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as db, db.begin():
            added = await ProtocolsRepository(db).add(
                PROTOCOL,
                "multi_step",
                protocol_json((10, 5.0, 5.0, 3.0, "constant"), (5, 5.0, 8.0, 3.0, "linear"), max_power=8.0),
            )
            await approve_as_system(db, added.protocol_id)
    finally:
        await engine.dispose()


def pedal_pressed(app: ToscaApp) -> bool | None:
    snapshot = app.snapshot
    if snapshot is None:
        return None
    return any(i.name == "footpedal" and i.ok for i in snapshot.interlocks)


@pytest.mark.timeout(180)
async def test_a_whole_treatment_from_login_to_notes(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    await add_protocol()
    year = datetime.now().year
    code = f"P-{year}-0001"
    async with controller():
        app = console(clock)
        async with app.run_test(size=(120, 40)) as pilot:
            await log_in(pilot)
            await connected(pilot)

            # Subjects: none yet; create one with the next free code.
            await pilot.press("t")
            await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
            await pilot.press("n")
            await wait_until(pilot, lambda: showing(app, SubjectFormScreen), "the new-subject form")
            await wait_until(pilot, lambda: code in screen_text(app), f"the next free code {code}")
            await enter_text(pilot, "1980-05-17")
            await pilot.press("enter")
            await enter_text(pilot, "female")
            await pilot.press("enter")
            await enter_text(pilot, "fair skin")
            await pilot.press("enter")
            await wait_until(pilot, lambda: showing(app, SubjectsScreen), "back on the subjects")
            subjects = app.screen
            assert isinstance(subjects, SubjectsScreen)
            await wait_until(
                pilot, lambda: [s.subject_code for s in subjects.subjects] == [code], "the new subject listed"
            )

            # The two-step protocol, chosen with the arrow keys.
            await pilot.press("enter")
            await wait_until(pilot, lambda: showing(app, ProtocolChoiceScreen), "the protocol choice")
            choice = app.screen
            assert isinstance(choice, ProtocolChoiceScreen)
            await wait_until(pilot, lambda: choice.loaded, "the protocols listed")
            names = [p.name for p in choice.protocols]
            assert PROTOCOL in names
            for _ in range(names.index(PROTOCOL)):
                await pilot.press("down")
            await wait_until(
                pilot,
                lambda: choice.preview is not None and choice.preview.summary.name == PROTOCOL,
                "the protocol's preview",
            )
            table = choice.query_one("#step-table", DataTable)
            assert table.row_count == 2
            await pilot.press("enter")

            # The checks, then key control.
            await wait_until(pilot, lambda: showing(app, ChecksScreen), "the checks", 60.0)
            checks = app.screen
            assert isinstance(checks, ChecksScreen)
            await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
            names = [c.name for c in checks.checks]
            for expected in ("device laser", "device tec", "device actuator", "device safety", "database"):
                assert expected in names, names
            assert any(n.startswith("calibration") for n in names) and "backup" in names
            await enter_text(pilot, "tech pass 1")
            await pilot.press("enter")
            await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard", 20.0)
            await wait_until(
                pilot,
                lambda: (
                    app.snapshot is not None
                    and any(i.name == "step" and i.ok for i in app.snapshot.interlocks)
                ),
                "the first step (ring in place)",
                30.0,
            )

            # Pedal down: emission. Release mid-step, press again.
            await pilot.press("f5")
            await wait_until(pilot, lambda: "LASER EMISSION" in screen_text(app), "LASER EMISSION", 20.0)
            await wait_until(
                pilot,
                lambda: (
                    app.snapshot is not None
                    and app.snapshot.session is not None
                    and app.snapshot.session.treating_s > 4.0
                ),
                "4 s of treatment",
                60.0,
            )
            await pilot.press("f5")
            await wait_until(pilot, lambda: pedal_pressed(app) is False, "the pedal released")
            await wait_until(pilot, lambda: "ARMED" in screen_text(app), "ARMED (pedal released)")
            assert app.snapshot is not None and not app.snapshot.emitting
            await pilot.press("f5")
            await wait_until(pilot, lambda: "LASER EMISSION" in screen_text(app), "emission again", 20.0)

            # The protocol completes by itself; the notes follow.
            await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end of the session", 60.0)
            end = app.screen
            assert isinstance(end, EndOfSessionScreen)
            await wait_until(pilot, lambda: "completed" in screen_text(app), "the summary")
            notes = end.query_one("#notes", TextArea)
            notes.focus()
            notes.text = NOTES
            await pilot.press("ctrl+s")
            # The technician signs the session with the password ("performed by").
            await wait_until(pilot, lambda: showing(app, SignDialog), "the signature dialog", 20.0)
            await enter_text(pilot, TECH_PASSWORD)
            await pilot.press("enter")
            await wait_until(pilot, lambda: showing(app, SubjectsScreen), "back on the subjects", 20.0)

    with sqlite3.connect("data/tosca.db") as db:
        row = db.execute(
            "SELECT s.status, s.protocol_name, p.subject_code, t.username, s.post_treatment_notes, "
            "s.total_laser_on_time_seconds, s.total_energy_joules, s.max_power_watts "
            "FROM sessions s JOIN subjects p USING (subject_id) JOIN tech_users t USING (tech_id)"
        ).fetchone()
        events = [e for (e,) in db.execute("SELECT event_type FROM treatment_events ORDER BY event_id")]
        transitions = [
            d
            for (d,) in db.execute(
                "SELECT description FROM safety_log WHERE description LIKE '% -> %' ORDER BY log_id"
            )
        ]
        subject = db.execute("SELECT date_of_birth, gender, notes FROM subjects").fetchone()
    status, protocol, subject_code, username, notes_saved, laser_on_s, energy_j, max_w = row
    assert (status, protocol, subject_code, username) == ("completed", PROTOCOL, code, "tina")
    assert NOTES in (notes_saved or "")
    # 10 s at 5 W and a 5 s ramp from 5 to 8 W: 82.5 J over 15 s of emission, however the pedal was used.
    assert laser_on_s == pytest.approx(15.0, abs=1.0)
    assert energy_j == pytest.approx(82.5, rel=0.05)
    assert max_w == pytest.approx(8.0, rel=0.05)
    assert subject == ("1980-05-17", "female", "fair skin")
    assert events.count("protocol_step_start") >= 2 and "protocol_step_end" in events
    assert any("treating -> armed" in t for t in transitions), transitions
    assert sum("armed -> treating" in t for t in transitions) >= 2, transitions
