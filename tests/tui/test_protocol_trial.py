"""Drafts on the technician's side: the protocol choice lists each protocol's approved version; on the
simulated rig a newer draft is listed too, marked, and choosing it asks for a trial of that draft; on a real
rig no draft is offered. The dashboard and the checks mark a session that tries a draft."""

from __future__ import annotations

from pathlib import Path

from console_fixtures import DATA_DIR, FakeClock, make_settings, seed, wait_until
from test_protocol_screen import SEED, SUBJECT, choice_ready, choice_screen
from test_subject_screens import ScreenApp
from textual.widgets import DataTable, Label

from control.messages import LaserView, RingView, SessionView, Snapshot
from control.protocol_approval import import_protocol
from control.protocols import install_library_protocols
from storage import create_engine, session_factory
from tests.support import protocol_json
from tui.screens._base import ScreenContext
from tui.screens.dashboard import readout_text

DRAFT_ONLY = "Only a draft"


async def prepare() -> None:
    """The shipped protocols (approved), a draft v2 of the seed example and a protocol with only a draft."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        await install_library_protocols(sessions)
        text = protocol_json((30, 4.0, 4.0, 3.0, "constant"), max_power=8.0)
        await import_protocol(sessions, text, name=SEED, admin="ada", source="seed2.json")
        await import_protocol(sessions, text, name=DRAFT_ONLY, admin="ada", source="only.json")
    finally:
        await engine.dispose()


def rows(app: ScreenApp) -> list[str]:
    table = app.screen.query_one("#protocol-table", DataTable)
    return [str(table.get_row_at(row)[0]) for row in range(table.row_count)]


async def test_a_real_rig_offers_approved_versions_only(data_dir: Path, clock: FakeClock) -> None:
    await prepare()
    app = ScreenApp(choice_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await choice_ready(pilot)
        assert [(s.name, s.version, s.draft) for s in screen.protocols if s.name in (SEED, DRAFT_ONLY)] == [
            (SEED, 1, False)
        ]
        assert not any(name.startswith("DRAFT") for name in rows(app))


async def test_the_simulated_rig_offers_a_draft_marked_and_asks_for_its_trial(
    data_dir: Path, clock: FakeClock
) -> None:
    await prepare()
    app = ScreenApp(choice_screen, clock)
    app.settings = make_settings(clock, sim=True)
    app.context = ScreenContext(settings=app.settings, accounts=app.accounts, link=None)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await choice_ready(pilot)
        listed = [(s.name, s.version, s.draft) for s in screen.protocols]
        assert (SEED, 1, False) in listed and (SEED, 2, True) in listed and (DRAFT_ONLY, 1, True) in listed
        names = rows(app)
        assert f"DRAFT v2 {SEED}" in names and SEED in names and f"DRAFT v1 {DRAFT_ONLY}" in names
        table = screen.query_one("#protocol-table", DataTable)
        table.move_cursor(row=listed.index((SEED, 2, True)))
        await wait_until(
            pilot,
            lambda: screen.preview is not None and screen.preview.summary.version == 2,
            "the draft's preview",
        )
        note = str(screen.query_one("#protocol-note", Label).render())
        assert note.startswith("DRAFT version 2, not approved: a trial on the simulated rig only")
        assert screen.preview is not None and screen.preview.steps[0].start_w == 4.0
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.requested) == 1, "the session request")
        assert (app.requested[0].protocol_name, app.requested[0].draft) == (SEED, True)
        table.move_cursor(row=listed.index((SEED, 1, False)))
        await pilot.press("s")
        await wait_until(pilot, lambda: len(app.requested) == 2, "the second request")
        assert (app.requested[1].protocol_name, app.requested[1].draft) == (SEED, False)
        assert SUBJECT == app.requested[1].subject_code


def snapshot(status: str, version: int) -> Snapshot:
    session = SessionView(
        session_id=4,
        subject_code=SUBJECT,
        protocol_name=SEED,
        technician="tina",
        status="in_progress",
        clock_s=0.0,
        treating_s=0.0,
        delivered_energy_j=0.0,
        protocol_version=version,
        protocol_status=status,
    )
    return Snapshot(
        seq=1,
        time_s=1.0,
        state="ready",
        emitting=False,
        sim=True,
        session=session,
        laser=LaserView(commanded_w=0.0, output_on=False),
        ring=RingView(),
    )


def test_the_dashboard_marks_a_draft_trial() -> None:
    first_line = readout_text(snapshot("draft", 2)).plain.splitlines()[0]
    assert first_line == f"{SUBJECT}  {SEED}  DRAFT v2 TRIAL"
    approved = readout_text(snapshot("approved", 1)).plain.splitlines()[0]
    assert approved == f"{SUBJECT}  {SEED}"
